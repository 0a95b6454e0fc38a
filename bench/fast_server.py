"""A minimal OpenAI-compatible chat endpoint for benchmarks: answers at once, pure ASGI.

    python bench/fast_server.py PORT
"""

import json
import sys

import uvicorn

MODELS = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
ANSWER = json.dumps({
    "id": "x", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
}).encode()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = MODELS if scope["method"] == "GET" else ANSWER
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", access_log=False,
                backlog=512)

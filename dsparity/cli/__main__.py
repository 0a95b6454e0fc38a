from dsparity.cli import main

main()

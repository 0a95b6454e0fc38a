"""Tokens and money: usage per sample, price tables."""

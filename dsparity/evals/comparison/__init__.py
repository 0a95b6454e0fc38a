"""Pairing two runs item by item and the compare command's flow."""

"""Stored models -> HTTP. Never imports torch, nor anything from export/."""

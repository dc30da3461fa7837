"""The floor benchmark's own ASGI apps (bench/floor.py): never part of the product."""

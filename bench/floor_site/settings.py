"""The product's settings, with one more URL: the floor behind all of the product's middleware
(bench/floor.py, arm MW). Only bench/floor.py starts daphne with these settings."""

from chatsite.settings import *  # noqa: F403

ROOT_URLCONF = "bench.floor_site.urls"

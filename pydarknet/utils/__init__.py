"""Small utilities every layer may use: writing files atomically."""

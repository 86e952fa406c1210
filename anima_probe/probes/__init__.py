"""Looking inside the frozen model: hook points, pooling, injection sensitivity, directions, statistics."""

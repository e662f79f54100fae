"""Contrails on GOES ABI scenes: reading ABI files, predicting over whole scenes and writing georeferenced maps."""

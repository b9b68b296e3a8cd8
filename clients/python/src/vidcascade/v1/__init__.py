"""gRPC stubs of vidcascade.v1, generated from proto/ when the package is built (setup.py)."""

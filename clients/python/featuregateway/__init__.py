"""Python client of feature-gateway (package featuregateway.v1).

The modules under featuregateway.v1 are generated from proto/ by clients/generate.sh; see
clients/README.md for a five-line example.
"""

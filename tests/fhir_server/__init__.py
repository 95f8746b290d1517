"""A real FHIR server for the integration tests: @medplum/fhir-router over its in-memory
repository (server.mjs, Node), started and loaded from Python (medplum.py)."""

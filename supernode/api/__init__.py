"""HTTP handlers: the seed REST API, the legacy dfget v1 endpoints and the system endpoints.

Handlers only translate: parse and validate the request into a pydantic model, call one manager
method, and render the answer. The wire rules (status codes, envelopes, error bodies) live here and
nowhere else.
"""

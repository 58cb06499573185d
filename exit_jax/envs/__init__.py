"""Environments: the protocol every domain shares (`base`), math, tool use and MLE, and the domain factories a
domain .gin file binds (`domains`)."""

"""Pointsman classifier: model selection, reasoning, system prompts, jailbreak and PII checks.

Answers the shim's ``pointsman.v1.classify`` requests over NATS, batching concurrent prompts into
one forward pass of a small encoder with classification heads (see services/classifier/README.md).
"""

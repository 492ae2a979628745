"""Hugging Face formats: export a run as a transformers folder (``AutoModelForMaskedLM.from_pretrained(...,
trust_remote_code=True)``; the remote code is loopmdm/model/, copied verbatim) and import such a folder back."""

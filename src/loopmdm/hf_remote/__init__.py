"""The transformers classes of LoopMDM, written so that the same files run as Hugging Face "remote code".

``configuration_loopmdm.py`` and ``modeling_loopmdm.py`` are copied verbatim into every exported folder;
``loopmdm_backbone.py`` is, inside the package, a re-export of ``loopmdm.model`` and, in an exported
folder, a self-contained copy generated from the package's sources by ``loopmdm.hf_model.backbone_source``
(so ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` needs only torch and transformers).
"""

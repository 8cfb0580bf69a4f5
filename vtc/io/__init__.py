"""IO: decode (PyAV), frame geometry, encoder towers (open_clip CLIP, timm SigLIP), audio, the token file."""

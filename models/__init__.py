"""dexport.models: the reference detection zoo, written in plain torch (imports torch only)."""

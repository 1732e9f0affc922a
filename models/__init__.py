"""dexport.models: the reference detection zoo, written in plain torch (imports torch and dexport.ir.dialects only)."""

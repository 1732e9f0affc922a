"""dexport.passes"""

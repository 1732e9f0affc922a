"""dexport.backends"""

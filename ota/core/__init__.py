"""Code shared by the OTA server and the edge agent: formats, signing helpers, the delta engine.

Nothing here may import the server's or the pipeline's heavy dependencies: the agent runs on a vehicle.
"""

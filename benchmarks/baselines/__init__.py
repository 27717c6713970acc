"""The seed article's servers, rebuilt so ligeiro can be measured against them.

They are baselines, not examples: ``fastapi_pickle`` loads a pickle, which ligeiro
never does unless told the file is trusted.
"""

"""Framework integrations over the core: Flask, Django, Pyramid, PasteDeploy.
Each imports its framework only when it is imported itself. (The executors of
other engines live in :mod:`asyncwsgi.executors`; their old names here still
import.)"""

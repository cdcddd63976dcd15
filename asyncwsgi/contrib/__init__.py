"""Adapters over the core: framework integrations (Flask, Django, PasteDeploy)
and executors that run tasks on other engines (Celery). Each imports its
third-party package only when it is imported itself."""

"""The HTTP side: each answer the middleware gives, in a module of its own.

``AsyncMiddleware`` routes a request to one of them: ``submission`` (a marked
request becomes a task), ``status`` (the status URL, its long-poll and
DELETE), ``stream`` (the event stream), ``tasklist`` (the task list),
``replay`` (a result sent again, with ranges), ``accepted`` (the 202 and its
document), ``scrape`` (/metrics). ``responses`` holds the small answers they
share, ``urls`` the status URLs, ``waits`` the slots of requests that wait,
``callbacks`` the callback sender's start in each process; ``answers``
makes them all for one middleware.
"""

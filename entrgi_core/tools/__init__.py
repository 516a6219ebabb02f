"""Experiment tools apart from the library: ``compare`` (reward against compute, ``entrgi
compare``), ``diagnose`` (which gate the reward model rewards, ``entrgi diagnose``), ``demo``
(``make demo``) and ``report`` (their tables, mean +- SEM, JSON and PNG). They may import
``guidance`` and ``rewards``; the library layer does not."""

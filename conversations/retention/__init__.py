"""The retention policy for conversations: the policy (policy.py), the run that applies it
(run.py) and its periodic Celery task (tasks.py)."""

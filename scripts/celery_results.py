"""Read tayori tasks with the real Celery client: for each task id, what
AsyncResult sees (state) and what .get() gives: the result, or the
exception it raises (class name, module, message). Prints one JSON list.

    celery_results.py REDIS_URL TASK_ID...
"""
import json
import sys

from celery import Celery

app = Celery("tayori-interop", backend=sys.argv[1])
out = []
for task_id in sys.argv[2:]:
    r = app.AsyncResult(task_id)
    item = {"task_id": task_id, "state": r.state}
    try:
        item["result"] = r.get(timeout=10)
        item["date_done"] = r.date_done.isoformat() if r.date_done else None
    except Exception as e:  # the point: what Celery raises
        item["exception"] = type(e).__name__
        item["exception_module"] = type(e).__module__
        item["message"] = str(e)
    out.append(item)
print(json.dumps(out))

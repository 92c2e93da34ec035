"""What the API and the workers share: settings, the queue, storage, the live channel and the job record.

Neither side's heavy dependencies are imported here (no torch, no FastAPI, Starlette or
prometheus_client), so the API image and the worker image both install it as it is.
"""

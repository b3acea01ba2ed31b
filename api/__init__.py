"""The FastAPI application run by the gunicorn workers; every data operation goes to the store."""

# The API, Flower and the decoder workers: Flask, Celery, Pillow, PyAV. No TensorFlow, so the image stays small.
FROM python:3.11-slim
WORKDIR /app
COPY requirements/api.txt requirements/api.txt
RUN pip install --no-cache-dir -r requirements/api.txt
COPY settings.py celeryconfig.py pyproject.toml ./
COPY api api
COPY models models
COPY tasks tasks
ENV CUDA_VISIBLE_DEVICES=""
EXPOSE 5000 5555
CMD ["gunicorn", "--workers", "2", "--threads", "32", "--bind", "0.0.0.0:5000", "api:create_app()"]

# The API, Flower and the decoder workers: Flask, Celery, Pillow, PyAV. No TensorFlow, so the image stays small.
# The project is installed as its wheel (built in the first stage), its dependencies from requirements/api.txt.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml MANIFEST.in README.md ./
COPY requirements requirements
COPY src src
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
COPY requirements/api.txt requirements/client.txt /tmp/requirements/
RUN pip install --no-cache-dir -r /tmp/requirements/api.txt -r /tmp/requirements/client.txt
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/imageclf-*.whl
WORKDIR /app
ENV CUDA_VISIBLE_DEVICES=""
EXPOSE 5000 5555
CMD ["gunicorn", "--workers", "2", "--threads", "32", "--bind", "0.0.0.0:5000", "imageclf.api:create_app()"]

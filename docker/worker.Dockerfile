# Workers: TensorFlow + the model. Build with --build-arg TF_PACKAGE="tensorflow[and-cuda]" for GPU hosts.
FROM python:3.11-slim
ARG TF_PACKAGE=tensorflow-cpu==2.21.0
WORKDIR /app
COPY requirements requirements
RUN sed -i "s|^tensorflow-cpu==.*|${TF_PACKAGE}|" requirements/worker.txt \
 && pip install --no-cache-dir -r requirements/worker.txt
COPY settings.py celeryconfig.py ./
COPY models models
COPY tasks tasks
COPY scripts scripts
CMD ["python", "-m", "scripts.start_workers"]

# Workers: TensorFlow + the model. Build with --build-arg TF_PACKAGE="tensorflow[and-cuda]" for GPU hosts.
# The project is installed as its wheel (built in the first stage), its dependencies from requirements/.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml MANIFEST.in README.md ./
COPY requirements requirements
COPY src src
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
ARG TF_PACKAGE=tensorflow-cpu==2.21.0
COPY requirements /tmp/requirements
RUN sed -i "s|^tensorflow-cpu==.*|${TF_PACKAGE}|" /tmp/requirements/model.txt \
 && pip install --no-cache-dir -r /tmp/requirements/worker.txt -r /tmp/requirements/client.txt
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/imageclf-*.whl
WORKDIR /app
CMD ["imageclf", "worker"]

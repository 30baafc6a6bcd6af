# tusserver image: the server only; Redis runs as its own service (compose.yaml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tusserver ./tusserver
COPY storage_backends ./storage_backends
# Optional backends to install (tusserver[smb] brings smbprotocol); empty for
# local storage only: docker build --build-arg EXTRAS= .
ARG EXTRAS=smb
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" && useradd --system --uid 10001 tus \
    && mkdir -p /srv/uploads && chown tus /srv/uploads
USER tus
ENV TUSSERVER_HOST=0.0.0.0 \
    TUSSERVER_PORT=8080 \
    TUSSERVER_STORAGE=/srv/uploads
EXPOSE 8080
CMD ["tusserver", "serve"]

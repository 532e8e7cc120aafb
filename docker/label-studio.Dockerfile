# Label Studio 1.23.2 installed and started exactly as the tests do (tests/setup/label_studio.sh,
# tests/label_studio/conftest.py), for docker-compose.yml.
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN python -m venv /opt/label-studio && /opt/label-studio/bin/python -m pip install "label-studio==1.23.2"
ENV PATH=/opt/label-studio/bin:$PATH \
    LABEL_STUDIO_BASE_DATA_DIR=/label-studio/data \
    ML_BLOCK_LOCAL_IP=false SSRF_PROTECTION_ENABLED=false

VOLUME ["/label-studio/data"]
EXPOSE 8080
# LABEL_STUDIO_USERNAME / _PASSWORD / _USER_TOKEN come from docker-compose.yml (.env).
CMD ["sh", "-c", "exec label-studio start --no-browser --internal-host 0.0.0.0 -p 8080 --data-dir /label-studio/data --username \"$LABEL_STUDIO_USERNAME\" --password \"$LABEL_STUDIO_PASSWORD\" --user-token \"$LABEL_STUDIO_USER_TOKEN\" --enable-legacy-api-token"]

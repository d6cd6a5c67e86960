#!/bin/sh
# One-shot release step (the `release` service in docker-compose.yml): apply
# migrations, then copy static files into STATIC_ROOT (the volume nginx serves).
set -eu
python manage.py migrate --noinput
python manage.py collectstatic --noinput -v0
echo "release: migrated and collected static files into ${STATIC_ROOT:-staticfiles}"

#!/bin/sh
# Entry point of the kadet MLflow server image: `mlflow "$@"`, with MLflow's basic-auth app
# configured from the environment first. MLflow reads the auth store's URI only from an ini
# file (MLFLOW_AUTH_CONFIG_PATH); the URI holds the store's password, so the file is written
# here from $MLFLOW_AUTH_DATABASE_URI, mode 0600, on the pod's /tmp (an emptyDir), never baked
# into the image nor put on the command line. The admin user's name and password reach MLflow
# as MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD (MLflow has no default password).
set -eu
if [ -n "${MLFLOW_AUTH_DATABASE_URI:-}" ]; then
  MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-/tmp/mlflow-auth/basic_auth.ini}"
  mkdir -p "$(dirname "$MLFLOW_AUTH_CONFIG_PATH")"
  umask 077
  # printf is a shell builtin: the URI never appears in another process's arguments
  printf '[mlflow]\ndefault_permission = %s\ndatabase_uri = %s\nadmin_username = %s\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n' \
    "${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}" "$MLFLOW_AUTH_DATABASE_URI" "${MLFLOW_AUTH_ADMIN_USERNAME:-admin}" \
    > "$MLFLOW_AUTH_CONFIG_PATH"
  export MLFLOW_AUTH_CONFIG_PATH
fi
exec mlflow "$@"

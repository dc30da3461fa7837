#!/usr/bin/env bash
# Back up Llama Chat: the PostgreSQL database (pg_dump, custom format) and the uploaded images
# (MEDIA_ROOT as a .tar.gz), into BACKUP_DIR, keeping the last KEEP_DAYS days.
#
#   sudo -u llamachat /srv/llamachat/app/deploy/backup.sh [BACKUP_DIR] [KEEP_DAYS]
#
# Defaults: /srv/llamachat/backups and 14 days. DATABASE_URL and MEDIA_ROOT come from
# LLAMACHAT_ENV_FILE (default /etc/llamachat/llamachat.env). With S3_BUCKET set the images live
# in the bucket: back it up with the bucket's own versioning or replication instead.
# The environment file itself (SECRET_KEY, FIELD_ENCRYPTION_KEYS) is not copied here on purpose:
# keep it in your secret store. Restore steps: docs/deployment.md, "Backups and restore".
set -euo pipefail
umask 077

env_file=${LLAMACHAT_ENV_FILE:-/etc/llamachat/llamachat.env}
backup_dir=${1:-/srv/llamachat/backups}
keep_days=${2:-14}

value() {
  # The last NAME=value line of the environment file, taken literally.
  local line found=""
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in "$1="*) found=${line#*=} ;; esac
  done < "$env_file"
  printf '%s' "$found"
}

database_url=$(value DATABASE_URL)
media_root=$(value MEDIA_ROOT)
s3_bucket=$(value S3_BUCKET)
if [ -z "$database_url" ]; then
  echo "backup: no DATABASE_URL in $env_file" >&2
  exit 1
fi

mkdir -p "$backup_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)

# The dump is consistent on its own (one snapshot); write to a temporary name first so a
# failed run never leaves a file that looks complete.
pg_dump --format=custom --no-owner --dbname="$database_url" \
  --file="$backup_dir/db-$stamp.dump.part"
mv "$backup_dir/db-$stamp.dump.part" "$backup_dir/db-$stamp.dump"

if [ -z "$s3_bucket" ] && [ -n "$media_root" ] && [ -d "$media_root" ]; then
  tar --create --gzip --file="$backup_dir/media-$stamp.tar.gz.part" --directory="$media_root" .
  mv "$backup_dir/media-$stamp.tar.gz.part" "$backup_dir/media-$stamp.tar.gz"
fi

# Rotation: drop backups (and leftovers of failed runs) older than KEEP_DAYS days.
find "$backup_dir" -maxdepth 1 -type f \
  \( -name 'db-*.dump' -o -name 'media-*.tar.gz' -o -name '*.part' \) \
  -mtime +"$keep_days" -delete

echo "backup: $backup_dir/db-$stamp.dump$([ -f "$backup_dir/media-$stamp.tar.gz" ] && echo " and media-$stamp.tar.gz")"

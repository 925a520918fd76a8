#!/usr/bin/env bash
# Copies FerretDB's module source from the Go module cache into $1 and applies waflow's three fixes to it.
#
# The first fix: FerretDB v1.24's SQLite backend finds a document by _id with `_ferretdb_sjson->'$._id' = ?`
# (find, update and delete), but creates the collection's unique _id index on `_ferretdb_sjson->"_id"`.
# SQLite only uses an expression index for the same expression, so every lookup by _id scanned the whole
# table (an update took 20 ms with 1,000 documents, and grew with the collection). `->'_id'` is the expression
# the index was built on: lookups by _id use it, and existing databases need no migration.
set -euo pipefail

dest="$1"
version="$(sed -n 's/^require github.com\/FerretDB\/FerretDB \(v[^ ]*\)$/\1/p' "$(dirname "$0")/go.mod")"
[ -n "$version" ] || { echo "patch.sh: FerretDB version not found in go.mod" >&2; exit 1; }
src="$(cd "$(dirname "$0")" && GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$version" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$src" ] || { echo "patch.sh: FerretDB $version source not downloaded" >&2; exit 1; }

rm -rf "$dest" && mkdir -p "$(dirname "$dest")"
cp -R "$src" "$dest" && chmod -R u+w "$dest"

file="$dest/internal/backends/sqlite/metadata/metadata.go"
before="IDColumn = DefaultColumn + \"->'\$._id'\""
after="IDColumn = DefaultColumn + \"->'_id'\""
grep -qF "$before" "$file" || { echo "patch.sh: $file has changed; review the _id index fix" >&2; exit 1; }
sed -i "s|->'\\\$\\._id'|->'_id'|" "$file"
grep -qF "$after" "$file" || { echo "patch.sh: the _id index fix did not apply" >&2; exit 1; }

# The second fix: writers of one SQLite database queue in FerretDB instead of in SQLite. Every insert and update
# is a transaction (fsql.DB.InTransaction); while one holds SQLite's single write lock, the others wait in
# SQLite's busy handler, which sleeps 1, 2, 5, 10... ms between attempts. With 16 concurrent writers a 1 ms
# update waited tens of ms. A mutex per database (one SQLite file) hands the lock over as soon as it is free.
file="$dest/internal/util/fsql/db.go"
grep -qF 'sqlDB     *sql.DB' "$file" ||
  { echo "patch.sh: $file has changed; review the writer mutex" >&2; exit 1; }
grep -qF 'if sqlTx, err = db.sqlDB.BeginTx(ctx, nil); err != nil {' "$file" ||
  { echo "patch.sh: $file has changed; review the writer mutex" >&2; exit 1; }
sed -i 's|^\tsqlDB     \*sql.DB$|\tsqlDB     *sql.DB\n\twriteMu   sync.Mutex // waflow: one writer at a time per SQLite file, queued here|' "$file"
sed -i 's|^\tif sqlTx, err = db.sqlDB.BeginTx(ctx, nil); err != nil {$|\tdb.writeMu.Lock()\n\tdefer db.writeMu.Unlock()\n\n&|' "$file"
sed -i 's|^\t"log/slog"$|\t"log/slog"\n\t"sync"|' "$file"
grep -qF 'db.writeMu.Lock()' "$file" && grep -qF 'writeMu   sync.Mutex' "$file" && grep -qF $'\t"sync"' "$file" ||
  { echo "patch.sh: the writer mutex did not apply" >&2; exit 1; }

# The third fix: an update reads its documents and closes that read before it writes them. FerretDB v1.24 wrote
# each matched document while the query that found it was still open, so every write ran beside an open SQLite
# read. SQLite can then never restart its write-ahead log: the log grew without end (8 KB per update) and every
# commit past 1,000 pages ran a checkpoint and two fsyncs.
file="$dest/internal/handler/msg_update.go"
before=$'\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)'
grep -qxF "$before" "$file" || { echo "patch.sh: $file has changed; review the read-before-write fix" >&2; exit 1; }
sed -i 's|^\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)$|\t\tdocs, err := iterator.ConsumeValues(iter) // waflow: the read is closed before the write\n\t\tif err != nil {\n\t\t\treturn 0, 0, nil, lazyerrors.Error(err)\n\t\t}\n\n\t\tread := iterator.Values(iterator.ForSlice(docs))\n\t\tcloser.Add(read)\n\n\t\tresult, err := common.UpdateDocument(ctx, c, "update", read, \&u)|' "$file"
grep -qF 'read := iterator.Values(iterator.ForSlice(docs))' "$file" ||
  { echo "patch.sh: the read-before-write fix did not apply" >&2; exit 1; }

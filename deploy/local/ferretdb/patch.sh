#!/usr/bin/env bash
# Copies FerretDB's module source from the Go module cache into $1 and applies waflow's seven fixes to it.
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

# The fourth fix: a find of `{_id: {$in: [...]}}` reads just those rows. FerretDB v1.24 sent SQLite only a filter
# of one _id; anything else read and decoded the whole table, so one page of a chat's timeline (its messages by
# _id) took seconds once the collection held tens of thousands of messages. The handler still applies the whole
# filter to what SQLite returns, so the narrower read changes no answer.
file="$dest/internal/backends/sqlite/collection.go"
[ "$(grep -cxF $'\tq += whereClause' "$file")" = 1 ] ||
  { echo "patch.sh: $file has changed; review the _id \$in fix" >&2; exit 1; }
sed -i 's|^\tq += whereClause$|\tif whereClause == "" { // waflow: {_id: {$in: [...]}} through the _id index\n\t\twhereClause, args = waflowIDsIn(params.Filter)\n\t}\n\n&|' "$file"
cat >>"$file" <<'GO'

// waflowIDsIn returns the WHERE clause and arguments for a filter that is exactly {_id: {$in: [ids]}} of strings
// or ObjectIDs (at most 1,000), or nothing.
func waflowIDsIn(filter *types.Document) (string, []any) {
	if filter.Len() != 1 {
		return "", nil
	}
	v, _ := filter.Get("_id")
	cond, ok := v.(*types.Document)
	if !ok || cond.Len() != 1 {
		return "", nil
	}
	in, _ := cond.Get("$in")
	ids, ok := in.(*types.Array)
	if !ok || ids.Len() == 0 || ids.Len() > 1000 {
		return "", nil
	}
	args := make([]any, 0, ids.Len())
	for i := 0; i < ids.Len(); i++ {
		id := must.NotFail(ids.Get(i))
		switch id.(type) {
		case string, types.ObjectID:
			args = append(args, string(must.NotFail(sjson.MarshalSingleValue(id))))
		default:
			return "", nil
		}
	}
	return fmt.Sprintf(` WHERE %s IN (?%s)`, metadata.IDColumn, strings.Repeat(", ?", len(args)-1)), args
}
GO
grep -qF 'whereClause, args = waflowIDsIn(params.Filter)' "$file" ||
  { echo "patch.sh: the _id \$in fix did not apply" >&2; exit 1; }

# The fifth fix: SQL statements are logged only when debug logging is on. FerretDB v1.24 built each statement's
# debug record before asking whether anyone wanted it (`l.With(args...).DebugContext(...)`), which quoted every
# argument, whole documents included, on every statement: a tenth of the CPU of an update.
for file in "$dest/internal/util/fsql/db.go" "$dest/internal/util/fsql/tx.go"; do
  [ "$(grep -c 'l.With(fields...).DebugContext(ctx, fmt.Sprintf(' "$file")" = 6 ] ||
    { echo "patch.sh: $file has changed; review the debug logging fix" >&2; exit 1; }
  sed -i -E 's/(tx|db)\.l\.With\(fields\.\.\.\)\.DebugContext\(ctx, (fmt\.Sprintf\("(>>>|<<<) %s", query\))\)/\1.l.DebugContext(ctx, \2, fields...)/' "$file"
  ! grep -qF 'With(fields...)' "$file" || { echo "patch.sh: the debug logging fix did not apply" >&2; exit 1; }
done

# The sixth fix: release builds do not track the lifetime of every iterator and connection object. FerretDB v1.24
# added each one to a pprof profile (capturing its stack) and set a finalizer that panics if the object is
# collected unclosed, on every query: about a tenth of the CPU of an update. Debug builds keep the tracking.
file="$dest/internal/util/resource/resource.go"
[ "$(grep -cxF $'\tcheckArgs(obj, token)' "$file")" = 2 ] ||
  { echo "patch.sh: $file has changed; review the resource tracking fix" >&2; exit 1; }
sed -i 's|^\tcheckArgs(obj, token)$|&\n\n\tif !debugbuild.Enabled { // waflow: tracking only in debug builds\n\t\treturn\n\t}|' "$file"
[ "$(grep -cF 'if !debugbuild.Enabled { // waflow' "$file")" = 2 ] ||
  { echo "patch.sh: the resource tracking fix did not apply" >&2; exit 1; }

# The seventh fix: an update command reports each upsert at the position of its statement in the command, as
# MongoDB does. FerretDB v1.24 numbered the upserts instead (0, 1, 2...), so when a bulk mixed statements that
# matched with statements that upserted, drivers pinned the upserted ids on the wrong operations.
file="$dest/internal/handler/msg_update.go"
grep -qxF $'\tfor _, u := range params.Updates {' "$file" && grep -qxF $'\t\t\t\t"index", int32(upserted.Len()),' "$file" ||
  { echo "patch.sh: $file has changed; review the upsert index fix" >&2; exit 1; }
sed -i 's|^\tfor _, u := range params.Updates {$|\tfor i, u := range params.Updates { // waflow: i is the statement'"'"'s position|' "$file"
sed -i 's|^\t\t\t\t"index", int32(upserted.Len()),$|\t\t\t\t"index", int32(i),|' "$file"
grep -qxF $'\t\t\t\t"index", int32(i),' "$file" || { echo "patch.sh: the upsert index fix did not apply" >&2; exit 1; }

// Package store is the library entry point of layers: one Store per root
// directory holds layers, images, containers and their mounts, on top of a
// graph driver, with metadata in one SQLite database.
//
// A Store is safe for concurrent use by goroutines and by several
// processes on the same root (an embedding engine and a shell user at
// once). What it guarantees, and how:
//
//   - Every change to the metadata is one SQLite transaction (WAL mode, a
//     busy timeout so that writers of other processes wait instead of
//     failing). A change that must survive a power loss is synced before
//     the call returns (the write-ahead log, and its directory entry once
//     per log file); mount counts and marks that recovery reads anyway are
//     not. Readers (lookups and lists) never take the store lock and see
//     the last committed state.
//   - A store-wide lock, flock on ROOT/store.lock plus a mutex inside the
//     process, serialises everything that changes driver state together
//     with its rows: creating and removing layers, mounting, unmounting.
//     Applying a layer's data is the exception: it runs outside the lock,
//     into a layer nobody else can see yet, so that several layers may be
//     applied at once (see ApplyDiff).
//   - A layer's row is written "incomplete" before the driver makes its
//     data and marked "complete" in one transaction once the data is whole
//     (and synced with the sync=true option). Removal marks the row
//     "removing" first, deletes the data, then the row. Lookups see
//     complete layers only. Open removes incomplete and removing layers a
//     killed process left behind, so a crash never leaves a half layer that
//     looks whole, a row without data or data without a row. An incomplete
//     layer still being applied by a live process is recognised by the
//     flock its process holds on ROOT/tmp/<id>.lock and left alone.
//   - A commit in place (CommitContainer, on a driver that can) records its
//     new layer incomplete together with a commit intent, so that Open
//     undoes a commit killed before it was recorded: the container goes
//     back onto its old parent with its changes, and the new layer goes.
//   - Mount counts live in the database and survive the process: a shell
//     user's `mount` in one process and `umount` in another balance. A
//     count whose path the kernel no longer shows mounted (the mount was
//     undone behind the store's back, or the machine rebooted) is read as
//     zero: the kernel's mountinfo is the truth.
//
// Layout of a root:
//
//	ROOT/layers.db          the metadata database (plus -wal and -shm)
//	ROOT/store.lock         the store-wide lock file
//	ROOT/tmp/<id>.lock      held while layer <id> is being applied
//	ROOT/tmp/pin-*.pins     the layers a differ (Diff, Changes) counts as
//	                        mounted, held by its process: Open gives back
//	                        the counts of a process that died
//	ROOT/blobs/sha256/<hex> image configs and manifests, content-addressed
//	ROOT/tar-layout/<id>.gz the layout of the tar layer <id> was
//	                        applied from (see LayerTar)
//	ROOT/<driver>/          the driver's home; the driver's name is
//	                        recorded in the database on first use
//
// IDs of layers, images and containers are 64 lower-case hex characters;
// an image's ID is the hex of its config's sha256 digest. Lookups take a
// full ID, a unique ID prefix, or for images and containers a name, as
// docker does.
//
// Drivers register themselves when their package is linked in; library
// users import package store/all (or the driver packages they want) for
// that, since this package names no driver.
//
// Durability: layer data is not synced by default (like every peer; see
// DESIGN.md), the database is. Check with Digests set finds layers whose
// content no longer matches its diffID after a power loss, and Repair
// removes them, with what depends on them, when asked.
package store

// Package image moves images between a store and the outside world:
// registries (Pull, Push) and, in later files, OCI layouts and archives
// (save, load) and containers (commit).
//
// Registries are spoken to with go-containerregistry: references are
// normalised as docker does ("busybox" is
// docker.io/library/busybox:latest), credentials come from the usual files
// (~/.docker/config.json and its credential helpers, containers'
// auth.json) through its default keychain, and Docker schema2 and OCI
// manifests and indexes are both understood.
//
// Pull streams: every blob is verified against its digest while it
// downloads (bounded concurrency, transient errors retried with backoff
// and resumed with a range request) into an unnamed spool file that its
// layer's apply reads as the bytes arrive, through store.ApplyLayers: with
// overlay the layers of an image apply at once, with other drivers bottom
// first while the blobs above keep downloading. Layers the store has already (same
// chainID) are not downloaded. A failed pull leaves nothing of itself:
// no image and no layer it created.
//
// Push sends each layer's blob once: a blob the store remembers for the
// layer (from a pull or an earlier push) is looked for in the registry
// first (HEAD) and mounted from another repository of the same registry
// when one of the image's names is there; only a layer the registry cannot
// get otherwise is compressed and uploaded, and the new blob's digest is
// remembered, so a second push uploads nothing and gives the same
// manifest digest.
package image

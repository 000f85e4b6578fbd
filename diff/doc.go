// Package diff computes, writes and applies changesets: the heart of layer
// correctness.
//
//   - Changes compares two trees (the double-walk differ) and lists what was
//     added, modified or deleted.
//   - Export writes a list of changes as an OCI image-spec layer tar:
//     deterministic, PAX headers, xattrs, hardlinks, whiteouts.
//   - Apply untars a layer into a layer root safely: no entry ever creates,
//     modifies or follows anything outside the root. Whiteouts are stored the
//     way the driver asks, through a WhiteoutFormat; that conversion lives
//     only here.
//   - Compression detection, decompression and compression (gzip, zstd).
//
// Where the image-spec is grey, the rules of DESIGN.md's "one tree per
// image" are decided here once, and every driver follows them.
package diff

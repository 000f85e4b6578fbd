package diff

// Hooks for the external tests of lower-layer lookups (apply_lower_test.go,
// package diff_test, which uses fixtures): they run each case with every
// resolver Apply has.

// ApplyResolverVariants names the ways Apply can resolve and write, for
// tests: "openat2" (the default), "walk" (no openat2, no writers) and
// "serial" (openat2, no writers).
var ApplyResolverVariants = []string{"openat2", "walk", "serial"}

// WithResolverVariant returns opts set up for variant.
func WithResolverVariant(opts ApplyOptions, variant string) ApplyOptions {
	switch variant {
	case "walk":
		opts.noOpenat2, opts.noWriters = true, true
	case "serial":
		opts.noWriters = true
	}
	return opts
}

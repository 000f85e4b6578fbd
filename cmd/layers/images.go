package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/layers-storage/layers/store"
)

// imageJSON is an image in `images --format json`: the contract's fields,
// which never change meaning.
type imageJSON struct {
	ID      string    `json:"id"`
	Names   []string  `json:"names"`
	Digest  string    `json:"digest"`
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
	Layers  []string  `json:"layers"`
}

func toImageJSON(img *store.Image) imageJSON {
	j := imageJSON{ID: img.ID, Names: img.Names, Digest: img.Digest.String(), Size: img.Size, Created: img.Created, Layers: img.Layers}
	if j.Names == nil {
		j.Names = []string{}
	}
	if j.Layers == nil {
		j.Layers = []string{}
	}
	return j
}

func (a *app) addImageCommands(root *cobra.Command) {
	var lf listFlags
	var dangling string
	images := &cobra.Command{
		Use:   "images [REPOSITORY[:TAG]]",
		Short: "List images, or those named in a repository (with a tag or digest: that name)",
		Args:  cobra.MaximumNArgs(1),
		RunE: a.verb(true, func(cmd *cobra.Command, st *store.Store, args []string) error {
			asJSON, err := lf.json()
			if err != nil {
				return err
			}
			imgs, err := st.Images()
			if err != nil {
				return fmt.Errorf("list images: %w", err)
			}
			var keep func(name string) bool
			if len(args) == 1 {
				if keep, err = nameFilter(args[0]); err != nil {
					return err
				}
				imgs = slices.DeleteFunc(imgs, func(img *store.Image) bool { return !slices.ContainsFunc(img.Names, keep) })
			}
			if dangling != "" {
				imgs = slices.DeleteFunc(imgs, func(img *store.Image) bool { return (len(img.Names) == 0) != (dangling == "true") })
			}
			return a.printImages(imgs, &lf, asJSON, keep)
		}),
		ValidArgsFunction: a.completeImages,
	}
	lf.addList(images, imageJSON{})
	acceptAll(images, "image")
	var filters []string
	images.Flags().StringArrayVarP(&filters, "filter", "f", nil, "list only images that match `KEY=VALUE`: dangling=true (images without a name) or dangling=false")
	_ = images.RegisterFlagCompletionFunc("filter", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"dangling=true", "dangling=false"}, cobra.ShellCompDirectiveNoFileComp
	})
	checkFormat := images.PreRunE
	images.PreRunE = func(cmd *cobra.Command, args []string) error {
		dangling = ""
		for _, f := range filters {
			v, ok := strings.CutPrefix(f, "dangling=")
			if !ok || v != "true" && v != "false" || dangling != "" && dangling != v {
				return usagef("--filter %q: want dangling=true or dangling=false (once)", f)
			}
			dangling = v
		}
		return checkFormat(cmd, args)
	}

	tag := &cobra.Command{
		Use:   "tag IMAGE REF",
		Short: "Give an image a name (moving it from the image that had it)",
		Args:  cobra.ExactArgs(2),
		RunE: a.verb(true, func(_ *cobra.Command, st *store.Store, args []string) error {
			return st.Tag(args[0], args[1])
		}),
		ValidArgsFunction: a.completeImages,
	}

	var force, all bool
	rmi := &cobra.Command{
		Use:   "rmi [-f] (IMAGE... | -a)",
		Short: "Remove images (an image's ID removes all its names; one of several names only untags)",
		Long: `Remove images and the layers that nothing else uses.

IMAGE is an ID, a unique ID prefix, a name or a digest. An image that a
container uses is refused unless -f, which removes the image record and
leaves the container its layers. Naming one of several names of an image
removes that name only, as docker does.`,
		Args: argsOrAll(&all),
		RunE: a.verb(true, func(_ *cobra.Command, st *store.Store, args []string) error {
			if all {
				imgs, err := st.Images()
				if err != nil {
					return fmt.Errorf("list images: %w", err)
				}
				args = args[:0]
				for _, img := range imgs {
					args = append(args, img.ID)
				}
			}
			return forEachRef(args, func(ref string) error { return removeImage(st, ref, force) })
		}),
		ValidArgsFunction: a.completeImages,
	}
	rmi.Flags().BoolVarP(&force, "force", "f", false, "remove images that containers use")
	rmi.Flags().BoolVarP(&all, "all", "a", false, "remove every image")

	root.AddCommand(images, tag, rmi)
}

// removeImage removes image ref, or only the name ref when it is one of
// several names of its image.
func removeImage(st *store.Store, ref string, force bool) error {
	img, err := st.Image(ref)
	if err != nil {
		return fmt.Errorf("remove image: %w", err)
	}
	if name, nerr := store.NormalizeName(ref); nerr == nil && len(img.Names) > 1 && slices.Contains(img.Names, name) {
		return st.Untag(name)
	}
	// By ID from here: the name may have moved meanwhile.
	_, err = st.RemoveImage(img.ID, force)
	return err
}

// forEachRef runs f on every argument, going on past failures, and
// reports them all in one line.
func forEachRef(refs []string, f func(ref string) error) error {
	var errs []error
	for _, ref := range refs {
		if err := f(ref); err != nil {
			errs = append(errs, err)
		}
	}
	return joinOneLine(errs)
}

// joinOneLine makes one error of several, each on the same line, so that
// a verb given several arguments still reports one stderr line.
func joinOneLine(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return fmt.Errorf("%w (and %d more: %s)", errs[0], len(errs)-1, strings.Join(msgs[1:], "; "))
}

// nameFilter returns what `images REF` keeps, as docker's does: the names
// in REF's repository, any tag, or the very name REF normalises to when
// it has a tag or a digest.
func nameFilter(ref string) (func(name string) bool, error) {
	full, err := store.NormalizeName(ref)
	if err != nil {
		return nil, err
	}
	name, _, digested := strings.Cut(ref, "@")
	if digested || strings.LastIndexByte(name, ':') > strings.LastIndexByte(name, '/') {
		return func(n string) bool { return n == full }, nil
	}
	repo, _ := splitName(full)
	return func(n string) bool { r, _ := splitName(n); return r == repo }, nil
}

// printImages prints imgs; the table rows only the names keep accepts
// (all when keep is nil), JSON and templates each image whole.
func (a *app) printImages(imgs []*store.Image, lf *listFlags, asJSON bool, keep func(name string) bool) error {
	if asJSON || lf.tmpl != nil {
		out := make([]imageJSON, 0, len(imgs))
		for _, img := range imgs {
			out = append(out, toImageJSON(img))
		}
		return printEntries(a.stdout, lf, out)
	}
	if a.quiet {
		for _, img := range imgs {
			fmt.Fprintln(a.stdout, lf.id(img.ID))
		}
		return nil
	}
	now := time.Now()
	t := newTable(a.stdout, "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "LAYERS")
	for _, img := range imgs {
		names := img.Names
		if len(names) == 0 {
			names = []string{""}
		}
		for _, n := range names {
			if keep != nil && !keep(n) {
				continue
			}
			repo, tag := splitName(n)
			t.row(repo, tag, lf.id(img.ID), ago(img.Created, now), humanSize(img.Size), fmt.Sprint(len(img.Layers)))
		}
	}
	return t.flush()
}

// splitName splits a normalised name into repository and tag ("<none>"
// for what is missing, as docker prints it).
func splitName(name string) (repo, tag string) {
	if name == "" {
		return "<none>", "<none>"
	}
	repo, _, _ = strings.Cut(name, "@")
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		return repo[:i], repo[i+1:]
	}
	return repo, "<none>"
}

// completeImages offers image names and short IDs for shell completion.
func (a *app) completeImages(_ *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
	st, err := a.store()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	imgs, err := st.Images()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, img := range imgs {
		out = append(out, img.Names...)
		out = append(out, shortID(img.ID))
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

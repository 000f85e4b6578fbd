package diff

import (
	"context"
	"errors"
)

// Changes walks lower and upper together and returns what changed from lower
// to upper, sorted by path. lower "" stands for an empty tree.
func Changes(ctx context.Context, lower, upper string) ([]Change, error) {
	return nil, errors.New("diff.Changes: not implemented")
}

package server

import "iter"

// watchMessageBytes is about the most one Watch response carries. gRPC
// clients refuse messages over 4 MiB by default, and one revision (an
// import batch, a large write) can change far more than that, so a
// revision's updates are split across responses of about this size; a
// response always carries at least one update.
const watchMessageBytes = 1 << 20

// sizedChunks yields consecutive runs of items whose sizes add up to at
// most max (a run holds at least one item); the bool is true for the last.
func sizedChunks[T any](items []T, size func(T) int, max int) iter.Seq2[[]T, bool] {
	return func(yield func([]T, bool) bool) {
		start, total := 0, 0
		for i, it := range items {
			n := size(it)
			if i > start && total+n > max {
				if !yield(items[start:i], false) {
					return
				}
				start, total = i, 0
			}
			total += n
		}
		yield(items[start:], true)
	}
}

package storetest

import (
	"context"
	"strconv"
	"testing"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// PagingRels is how many relationships BenchmarkPaging pages through.
const PagingRels = 100_000

// BenchmarkPaging fills s (empty, no schema) with PagingRels relationships
// and reads them all in pages of 100 and of 1,000, each page a Read
// resuming after the previous page's last key. With a working cursor the
// two cost about the same per relationship (ns/rel); a store that
// re-reads what comes before the cursor costs about the page-size ratio
// more with the small pages.
func BenchmarkPaging(b *testing.B, s store.Store) {
	ctx := context.Background()
	if _, err := s.WriteSchema(ctx, "definition user {}\n\ndefinition doc {\n\trelation viewer: user\n}\n"); err != nil {
		b.Fatal(err)
	}
	const batch = 10_000
	for start := 0; start < PagingRels; start += batch {
		muts := make([]store.Mutation, batch)
		for i := range muts {
			id := strconv.Itoa(start + i)
			muts[i] = store.Mutation{Op: store.Create, Rel: rel.Relationship{
				Resource: rel.Object{Type: "doc", ID: "d" + id}, Relation: "viewer", Subject: rel.Subject{Type: "user", ID: "u" + id},
			}}
		}
		if _, err := s.Write(ctx, nil, muts); err != nil {
			b.Fatal(err)
		}
	}
	rev, err := s.Head(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{100, 1000} {
		b.Run("page="+strconv.Itoa(size), func(b *testing.B) {
			for b.Loop() {
				if n := pageAll(b, s, rev, size); n != PagingRels {
					b.Fatalf("paged through %d relationships, want %d", n, PagingRels)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*PagingRels), "ns/rel")
		})
	}
}

// pageAll reads everything at rev in pages of size and counts it.
func pageAll(b *testing.B, s store.Store, rev store.Revision, size int) int {
	total := 0
	var after *rel.Key
	for {
		n := 0
		for r, err := range s.Read(context.Background(), rev, rel.Filter{}, after) {
			if err != nil {
				b.Fatal(err)
			}
			n++
			if n == size {
				k := r.Key()
				after = &k
				break
			}
		}
		total += n
		if n < size {
			return total
		}
	}
}

//go:build !unix

package audit

// lockDir is a no-op where flock is unavailable: run one server per
// audit directory.
func lockDir(string) (func() error, error) { return func() error { return nil }, nil }

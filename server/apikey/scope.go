// Package apikey holds Mandate's scoped API keys: a keys file of named keys,
// stored only as SHA-256 hashes, each allowed a set of scopes, and the table
// of which scope every gRPC method needs.
//
// The server's authenticator admits these keys beside the preshared keys
// (which hold every scope) and checks ScopeFor before any handler runs.
package apikey

import (
	"fmt"
	"slices"
	"strings"
)

// Scope is one kind of access a key may be granted.
type Scope string

// The scopes. Check covers every read of authorization data (checks,
// lookups, expand, relationship reads, the schema read and Watch); the
// others cover one family of changes or sensitive reads each; admin covers
// every method.
const (
	Check     Scope = "check"
	Write     Scope = "write"
	Schema    Scope = "schema"
	Audit     Scope = "audit"
	Tokens    Scope = "tokens"
	Approvals Scope = "approvals"
	Admin     Scope = "admin"
)

// Scopes lists every scope, in the order the documentation gives them.
var Scopes = []Scope{Check, Write, Schema, Audit, Tokens, Approvals, Admin}

// ParseScope reads a scope name.
func ParseScope(s string) (Scope, error) {
	sc := Scope(strings.TrimSpace(s))
	if !slices.Contains(Scopes, sc) {
		return "", fmt.Errorf("scope %q: expected one of %s", s, joinScopes(Scopes))
	}
	return sc, nil
}

func joinScopes(s []Scope) string {
	names := make([]string, len(s))
	for i, sc := range s {
		names[i] = string(sc)
	}
	return strings.Join(names, ", ")
}

// methodScopes maps every method of mandate.v1 and authzed.api.v1 to the
// scope it needs. A method missing here is refused to every key but an
// admin one (ScopeFor), and the package's tests fail, so a new method
// cannot ship without a decision.
var methodScopes = map[string]Scope{
	// mandate.v1
	"/mandate.v1.PermissionService/Check":           Check,
	"/mandate.v1.PermissionService/CheckBulk":       Check,
	"/mandate.v1.PermissionService/LookupResources": Check,
	"/mandate.v1.PermissionService/LookupSubjects":  Check,
	"/mandate.v1.PermissionService/Expand":          Check,

	"/mandate.v1.RelationshipService/ReadRelationships":   Check,
	"/mandate.v1.RelationshipService/Watch":               Check,
	"/mandate.v1.RelationshipService/ExportRelationships": Check,
	"/mandate.v1.RelationshipService/WriteRelationships":  Write,
	"/mandate.v1.RelationshipService/DeleteRelationships": Write,
	"/mandate.v1.RelationshipService/ImportRelationships": Write,

	"/mandate.v1.SchemaService/ReadSchema":     Check,
	"/mandate.v1.SchemaService/ValidateSchema": Check, // writes nothing
	"/mandate.v1.SchemaService/WriteSchema":    Schema,

	"/mandate.v1.AuditService/Query": Audit,

	"/mandate.v1.TokenService/Mint":            Tokens,
	"/mandate.v1.TokenService/Revoke":          Tokens,
	"/mandate.v1.TokenService/Inspect":         Tokens,
	"/mandate.v1.TokenService/ListRevocations": Tokens,

	"/mandate.v1.ApprovalService/Request": Approvals,
	"/mandate.v1.ApprovalService/Get":     Approvals,
	"/mandate.v1.ApprovalService/List":    Approvals,
	"/mandate.v1.ApprovalService/Approve": Approvals,
	"/mandate.v1.ApprovalService/Deny":    Approvals,
	"/mandate.v1.ApprovalService/Revoke":  Approvals,
	"/mandate.v1.ApprovalService/Watch":   Approvals,
	"/mandate.v1.ApprovalService/EndTask": Approvals,

	// authzed.api.v1
	"/authzed.api.v1.PermissionsService/CheckPermission":         Check,
	"/authzed.api.v1.PermissionsService/CheckBulkPermissions":    Check,
	"/authzed.api.v1.PermissionsService/ExpandPermissionTree":    Check,
	"/authzed.api.v1.PermissionsService/LookupResources":         Check,
	"/authzed.api.v1.PermissionsService/LookupSubjects":          Check,
	"/authzed.api.v1.PermissionsService/ReadRelationships":       Check,
	"/authzed.api.v1.PermissionsService/ExportBulkRelationships": Check,
	"/authzed.api.v1.PermissionsService/WriteRelationships":      Write,
	"/authzed.api.v1.PermissionsService/DeleteRelationships":     Write,
	"/authzed.api.v1.PermissionsService/ImportBulkRelationships": Write,

	"/authzed.api.v1.SchemaService/ReadSchema":            Check,
	"/authzed.api.v1.SchemaService/ReflectSchema":         Check,
	"/authzed.api.v1.SchemaService/ComputablePermissions": Check,
	"/authzed.api.v1.SchemaService/DependentRelations":    Check,
	"/authzed.api.v1.SchemaService/DiffSchema":            Check,
	"/authzed.api.v1.SchemaService/WriteSchema":           Schema,

	"/authzed.api.v1.WatchService/Watch": Check,

	"/authzed.api.v1.ExperimentalService/BulkCheckPermission":                       Check,
	"/authzed.api.v1.ExperimentalService/BulkExportRelationships":                   Check,
	"/authzed.api.v1.ExperimentalService/ExperimentalReflectSchema":                 Check,
	"/authzed.api.v1.ExperimentalService/ExperimentalComputablePermissions":         Check,
	"/authzed.api.v1.ExperimentalService/ExperimentalDependentRelations":            Check,
	"/authzed.api.v1.ExperimentalService/ExperimentalDiffSchema":                    Check,
	"/authzed.api.v1.ExperimentalService/ExperimentalCountRelationships":            Check,
	"/authzed.api.v1.ExperimentalService/BulkImportRelationships":                   Write,
	"/authzed.api.v1.ExperimentalService/ExperimentalRegisterRelationshipCounter":   Admin,
	"/authzed.api.v1.ExperimentalService/ExperimentalUnregisterRelationshipCounter": Admin,
}

// AuthZENPrefix is the path prefix of the HTTP-only AuthZEN 1.0 API
// (server/authzen), authorized by its request path: the check scope.
const AuthZENPrefix = "/access/v1/"

// ScopeFor returns the scope a gRPC method (as "/package.Service/Method")
// needs. A method the table does not know needs Admin: an unclassified
// method fails closed.
func ScopeFor(fullMethod string) (Scope, bool) {
	if strings.HasPrefix(fullMethod, AuthZENPrefix) {
		// Every AuthZEN call is a decision or a search.
		return Check, true
	}
	sc, ok := methodScopes[fullMethod]
	if !ok {
		return Admin, false
	}
	return sc, true
}

// Allows reports whether a key holding scopes may call a method needing
// need: it holds need or admin.
func Allows(scopes []Scope, need Scope) bool {
	return slices.Contains(scopes, need) || slices.Contains(scopes, Admin)
}

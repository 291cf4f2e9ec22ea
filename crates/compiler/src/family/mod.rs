//! The compiler of one IP family ([`FamilyCompiler`], whose state is declared in the crate root):
//! what each service contributed (its claims on set and map elements, its own chains and sets),
//! full and incremental compilation into a transaction.
//!
//! The bookkeeping of claims, frontends and affinity names is in `claims`, the journal that
//! undoes an update in `journal`.

mod claims;
mod journal;

use super::*;

/// A claim of one service port on one element.
#[derive(Debug, Clone)]
struct Claim {
    owner: Arc<ServicePortName>,
    value: Option<Value>,
}

/// The claims on one element, sorted by owner. Almost every element has exactly one claim,
/// which is stored inline (no allocation); the others, rare, are boxed so that the claim
/// table's entries stay small.
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    first: Claim,
    #[allow(clippy::box_collection)] // a thin pointer: the entry stays 8 bytes smaller
    rest: Option<Box<Vec<Claim>>>,
}

impl Claims {
    fn iter(&self) -> impl Iterator<Item = &Claim> {
        std::iter::once(&self.first).chain(self.rest.iter().flat_map(|r| r.iter()))
    }

    fn insert(&mut self, claim: Claim) {
        let rest = self.rest.get_or_insert_with(Default::default);
        if claim.owner < self.first.owner {
            let old = std::mem::replace(&mut self.first, claim);
            rest.insert(0, old);
        } else {
            let pos = rest.partition_point(|c| c.owner < claim.owner);
            rest.insert(pos, claim);
        }
    }

    /// Removes `owner`'s claim; returns false when no claim is left.
    fn remove(&mut self, owner: &ServicePortName) -> bool {
        let Some(rest) = self.rest.as_mut() else {
            return *self.first.owner != *owner;
        };
        if *self.first.owner == *owner {
            if rest.is_empty() {
                return false;
            }
            self.first = rest.remove(0);
        } else if let Some(pos) = rest.iter().position(|c| *c.owner == *owner) {
            rest.remove(pos);
        }
        if rest.is_empty() {
            self.rest = None;
        }
        true
    }
}

/// A chain or set that belongs to one service alone (session affinity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owned {
    /// A regular chain with its rules.
    Chain(rudder_nft::ChainDecl, Vec<rudder_nft::Rule>),
    /// A set.
    Set(rudder_nft::SetDecl),
}

impl Owned {
    fn name(&self) -> &Name {
        match self {
            Owned::Chain(c, _) => &c.name,
            Owned::Set(s) => &s.name,
        }
    }

    /// Chains and sets live in separate namespaces: the key is the kind and the name.
    fn key(&self) -> (bool, Name) {
        (matches!(self, Owned::Set(_)), self.name().clone())
    }
}

/// What one service contributes to one family's ruleset, as compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fragment {
    pub(crate) claims: Vec<(SetId, Key, Arc<ServicePortName>, Option<Value>)>,
    pub(crate) classes: BTreeSet<Class>,
    pub(crate) objects: Vec<Owned>,
    /// Ports with endpoints elsewhere but none on this node under a `Local` policy:
    /// `[internal, external]` (kube-proxy's `no_local_endpoints` gauge).
    pub(crate) no_local: [u32; 2],
    /// What was refused (addresses of this node used as service addresses).
    pub(crate) problems: Vec<Problem>,
    /// The frontends the service's ports claim, with their ranks (see [`conflict`]).
    pub(crate) frontends: Vec<(FrontendKey, FrontendRank)>,
}

/// What the compiler remembers of a service: which elements it claimed (the values live in
/// the claim table; keys are shared, not copied).
#[derive(Debug, Clone, Default)]
pub(crate) struct Stored {
    claims: Vec<(SetId, Key, Arc<ServicePortName>, Option<Value>)>,
    objects: Vec<Owned>,
    no_local: [u32; 2],
    frontends: Vec<(FrontendKey, FrontendRank)>,
}

pub(crate) type ElemId = (SetId, Key);

/// Records the previous value of `map[key]` in `journal.field`, unless it was recorded
/// already.
macro_rules! note {
    ($self:ident, $field:ident, $key:expr) => {
        if let Some(j) = $self.journal.as_mut() {
            let key = $key;
            if !j.$field.contains_key(key) {
                j.$field.insert(key.clone(), $self.$field.get(key).cloned());
            }
        }
    };
}

pub(crate) use note;

/// Service ports refused because another port's affinity objects would have the same names:
/// the identity and the port that keeps it.
pub(crate) type NameLosers = FxHashMap<ServicePortName, (u128, Arc<ServicePortName>)>;

pub(crate) fn nft_family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => Family::Ip,
        IpFamily::V6 => Family::Ip6,
    }
}

/// The endpoint slots a service had, per endpoint map and frontend (see
/// [`service::PrevSlots`]).
fn prev_slots(old: &Stored) -> service::PrevSlots {
    let mut prev = service::PrevSlots::default();
    for (set, k, _, value) in &old.claims {
        if let (true, Some(v)) = (set.is_endpoint_map(), value) {
            let atoms = k.atoms();
            if let Some((Atom::Int(slot), prefix)) = atoms.split_last() {
                let slots = prev.entry((*set, prefix.to_vec())).or_default();
                let slot = *slot as usize;
                if slots.len() <= slot {
                    slots.resize(slot + 1, v.clone());
                }
                slots[slot] = v.clone();
            }
        }
    }
    prev
}

impl FamilyCompiler {
    /// Recompiles the given services and returns the operations for what changed. An
    /// excluded service is compiled as if it did not exist.
    pub(crate) fn update(
        &mut self,
        state: &ProxyState,
        ctx: &Ctx,
        changed: &BTreeSet<ServiceKey>,
        excluded: &BTreeSet<ServiceKey>,
        problems: &mut Vec<Problem>,
    ) -> Transaction {
        let service = |key: &ServiceKey| state.service(key).filter(|_| !excluded.contains(key));
        // Affinity names first: a changed service can make an unchanged one lose (or win back)
        // its names, and then that one is recompiled too.
        let mut touched = BTreeSet::new();
        for key in changed {
            self.register_affinity(key, service(key), ctx, &mut touched);
        }
        let extra = self.resolve_affinity_names(&touched);
        let all;
        let changed = if extra.iter().all(|k| changed.contains(k)) {
            changed
        } else {
            all = changed.union(&extra).cloned().collect::<BTreeSet<_>>();
            &all
        };
        // 1. Compile the changed services (nothing changes yet: compiling reads the old
        // fragments for their endpoint slots).
        let mut work: Vec<(&ServiceKey, Option<Fragment>)> = Vec::with_capacity(changed.len());
        for key in changed {
            let prev_slots = self.frags.get(key).map(prev_slots).unwrap_or_default();
            let frag = service(key).map(|svc| {
                let mut frag = service::compile(
                    self.family,
                    self.primary,
                    state,
                    svc,
                    ctx,
                    &self.name_losers,
                    Some(&prev_slots),
                );
                problems.append(&mut frag.problems);
                frag
            });
            work.push((key, frag));
        }

        // 2. Every element whose effective value may change, with its value now: the changed
        // services' old and new elements, and the elements other (unchanged) service ports
        // hold on a frontend a changed one claims or claimed, since its winner may change.
        let mut before: BTreeMap<ElemId, Option<Option<Value>>> = BTreeMap::new();
        let mut touched: BTreeSet<FrontendKey> = BTreeSet::new();
        for (key, frag) in &work {
            let old = self.frags.get(*key);
            let old_claims = old.into_iter().flat_map(|o| &o.claims);
            let new_claims = frag.iter().flat_map(|f| &f.claims);
            for (set, k, _, _) in old_claims.chain(new_claims) {
                let id = (*set, k.clone());
                if let std::collections::btree_map::Entry::Vacant(e) = before.entry(id) {
                    let value = self.effective(e.key());
                    e.insert(value);
                }
            }
            let old_fes = old.into_iter().flat_map(|o| &o.frontends);
            let new_fes = frag.iter().flat_map(|f| &f.frontends);
            touched.extend(old_fes.chain(new_fes).map(|(fe, _)| *fe));
        }
        let mut others: BTreeMap<&ServiceKey, BTreeSet<FrontendKey>> = BTreeMap::new();
        for fe in &touched {
            let Some(c) = self.frontends.get(fe) else {
                continue;
            };
            for r in std::iter::once(c.winner()).chain(c.losers()) {
                if !changed.contains(&r.rank.owner.service) {
                    others.entry(&r.rank.owner.service).or_default().insert(*fe);
                }
            }
        }
        for (key, fes) in others {
            let Some(stored) = self.frags.get(key) else {
                continue;
            };
            for (set, k, _, _) in &stored.claims {
                if FrontendKey::of_element(*set, k).is_some_and(|fe| fes.contains(&fe)) {
                    let id = (*set, k.clone());
                    if let std::collections::btree_map::Entry::Vacant(e) = before.entry(id) {
                        let value = self.effective(e.key());
                        e.insert(value);
                    }
                }
            }
        }

        // 3. Replace the changed services' fragments.
        let mut new_classes = BTreeSet::new();
        // Objects owned by services (session affinity), before and after, by name.
        let mut old_objects: BTreeMap<(bool, Name), Owned> = BTreeMap::new();
        let mut new_objects: BTreeMap<(bool, Name), Owned> = BTreeMap::new();
        for (key, frag) in work {
            note!(self, frags, key);
            if let Some(old) = self.frags.remove(key) {
                for (total, n) in self.no_local.iter_mut().zip(old.no_local) {
                    *total = total.saturating_sub(u64::from(n));
                }
                for o in &old.objects {
                    old_objects.insert(o.key(), o.clone());
                }
                for (set, k, owner, _) in old.claims {
                    self.remove_claim(&(set, k), &owner);
                }
                for (fe, rank) in &old.frontends {
                    self.remove_contender(fe, &rank.rank.owner);
                }
            }
            if let Some(frag) = frag {
                for o in &frag.objects {
                    new_objects.insert(o.key(), o.clone());
                }
                new_classes.extend(self.insert_fragment(key, frag));
            }
        }
        self.resolve_frontends(&touched);

        let mut tx = Transaction::new();
        for c in &new_classes {
            layout::class_objects(
                nft_family(self.family),
                &self.table,
                *c,
                ctx.config.masquerade_mark(),
                &ctx.node,
                &mut tx,
            );
        }
        let mut deletes: BTreeMap<SetId, Vec<Key>> = BTreeMap::new();
        let mut adds: BTreeMap<SetId, Vec<(Key, Option<Value>)>> = BTreeMap::new();
        for (id, old) in before {
            let new = self.effective(&id);
            if new == old {
                continue;
            }
            let (set, key) = id;
            if old.is_some() {
                deletes.entry(set).or_default().push(key.clone());
            }
            if let Some(v) = new {
                adds.entry(set).or_default().push((key, v));
            }
        }
        // Owned objects: create new chains and sets first, flush chains that change or go
        // (dropping their references), then element deletions, set replacements, rules,
        // element additions, and chain deletions last.
        let t = &self.table;
        let mut flushes = Vec::new();
        let mut set_deletes = Vec::new();
        let mut set_adds = Vec::new();
        let mut rules = Vec::new();
        let mut chain_deletes = Vec::new();
        // Sets that go or change type: chains using them must let go of them first.
        let replaced_sets: BTreeSet<&Name> = old_objects
            .iter()
            .filter(|(k, o)| k.0 && new_objects.get(*k) != Some(*o))
            .map(|(k, _)| &k.1)
            .collect();
        let uses_replaced = |rules: &[rudder_nft::Rule]| {
            rules
                .iter()
                .flat_map(|r| &r.stmts)
                .any(|st| st.set_refs().is_some_and(|n| replaced_sets.contains(n)))
        };
        for (key, new) in &new_objects {
            let name = &key.1;
            match (old_objects.get(key), new) {
                (Some(old), Owned::Chain(_, r)) if old == new && uses_replaced(r) => {
                    flushes.push(Op::FlushChain(t.clone(), name.clone()));
                    rules.extend(
                        r.iter()
                            .map(|r| Op::AddRule(t.clone(), name.clone(), r.clone())),
                    );
                }
                (Some(old), new) if old == new => {}
                (old, Owned::Chain(decl, r)) => {
                    if old.is_some() {
                        flushes.push(Op::FlushChain(t.clone(), name.clone()));
                    } else {
                        tx.add_chain(t, decl.clone());
                    }
                    rules.extend(
                        r.iter()
                            .map(|r| Op::AddRule(t.clone(), name.clone(), r.clone())),
                    );
                }
                (old, Owned::Set(decl)) => {
                    if old.is_some() {
                        set_deletes.push(Op::DeleteSet(t.clone(), name.clone(), false));
                        set_adds.push(Op::AddSet(t.clone(), decl.clone()));
                    } else {
                        tx.add_set(t, decl.clone());
                    }
                }
            }
        }
        for (key, old) in &old_objects {
            if new_objects.contains_key(key) {
                continue;
            }
            let name = &key.1;
            match old {
                Owned::Chain(..) => {
                    flushes.push(Op::FlushChain(t.clone(), name.clone()));
                    chain_deletes.push(Op::DeleteChain(t.clone(), name.clone()));
                }
                Owned::Set(_) => set_deletes.push(Op::DeleteSet(t.clone(), name.clone(), false)),
            }
        }
        for op in flushes {
            tx.push(op);
        }
        for (set, keys) in deletes {
            tx.delete_elements(t, &set.name(), keys);
        }
        for op in set_deletes.into_iter().chain(set_adds).chain(rules) {
            tx.push(op);
        }
        for (set, elems) in adds {
            tx.add_elements(t, &set.name(), elems);
        }
        for op in chain_deletes {
            tx.push(op);
        }
        tx
    }

    /// Forgets everything and compiles every service but the excluded ones: the complete
    /// table.
    pub(crate) fn full(
        &mut self,
        state: &ProxyState,
        ctx: &Ctx,
        excluded: &BTreeSet<ServiceKey>,
        problems: &mut Vec<Problem>,
    ) -> Transaction {
        // `clear` keeps the hash table's capacity: a resync does not grow it again.
        self.frags.clear();
        self.no_local = [0; 2];
        self.claims.clear();
        self.contested.clear();
        self.frontends.clear();
        self.contested_frontends.clear();
        self.lost.clear();
        self.classes.clear();
        self.affinity_ids.clear();
        self.affinity_regs.clear();
        self.name_losers.clear();
        let mut touched = BTreeSet::new();
        let services = || state.services().filter(|s| !excluded.contains(&s.key));
        for svc in services() {
            self.register_affinity(&svc.key, Some(svc), ctx, &mut touched);
        }
        self.resolve_affinity_names(&touched);
        self.skeleton = layout::skeleton(
            nft_family(self.family),
            &self.table,
            &ctx.config,
            &ctx.node,
            &ctx.service_cidrs,
        );
        for svc in services() {
            let mut frag = service::compile(
                self.family,
                self.primary,
                state,
                svc,
                ctx,
                &self.name_losers,
                None,
            );
            problems.append(&mut frag.problems);
            self.insert_fragment(&svc.key, frag);
        }
        let contested: Vec<FrontendKey> = self.contested_frontends.iter().copied().collect();
        self.resolve_frontends(&contested);
        self.create_transaction(ctx)
    }

    /// The operations that create the whole table from nothing. Elements are listed per set
    /// in service-key order, then in each service's own order: deterministic without sorting.
    pub(crate) fn create_transaction(&self, ctx: &Ctx) -> Transaction {
        let mut tx = self.skeleton.to_transaction();
        for c in &self.classes {
            layout::class_objects(
                nft_family(self.family),
                &self.table,
                *c,
                ctx.config.masquerade_mark(),
                &ctx.node,
                &mut tx,
            );
        }
        // Service-owned objects: every chain and set declared before any rule uses them.
        let owned = self.frags.values().flat_map(|s| &s.objects);
        for o in owned.clone() {
            match o {
                Owned::Chain(decl, _) => tx.add_chain(&self.table, decl.clone()),
                Owned::Set(decl) => tx.add_set(&self.table, decl.clone()),
            }
        }
        for o in owned {
            if let Owned::Chain(decl, rules) = o {
                for r in rules {
                    tx.add_rule(&self.table, &decl.name, r.clone());
                }
            }
        }
        let mut per_set: BTreeMap<SetId, Vec<(Key, Option<Value>)>> = BTreeMap::new();
        for stored in self.frags.values() {
            for (set, key, owner, value) in &stored.claims {
                let id = (*set, key.clone());
                // Emit each element once: from the service port whose claim is effective.
                // Uncontested elements of uncontested frontends have a single claim, which is
                // this one.
                let alone = (self.contested.is_empty() || !self.contested.contains(&id))
                    && (self.contested_frontends.is_empty()
                        || FrontendKey::of_element(*set, key)
                            .is_none_or(|fe| !self.contested_frontends.contains(&fe)));
                let mine = alone
                    || self
                        .effective_claim(&id)
                        .is_some_and(|c| Arc::ptr_eq(&c.owner, owner));
                if mine {
                    per_set
                        .entry(*set)
                        .or_default()
                        .push((key.clone(), value.clone()));
                }
            }
        }
        for (set, elems) in per_set {
            tx.add_elements(&self.table, &set.name(), elems);
        }
        tx
    }
}
